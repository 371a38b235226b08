"""The node-wide memory ledger."""
