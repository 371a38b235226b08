"""Starting and talking to zygotes; the forked task process and its wire format."""
