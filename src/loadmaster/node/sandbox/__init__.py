"""The task sandbox: policy, namespaces, Landlock."""
