"""rich rendering shared by commands: output envelope, check lists, tables."""
