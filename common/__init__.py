"""What broker and clients share: the wire protocol and the `zchat` command."""
