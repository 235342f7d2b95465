"""Built-in connectors, registered through Switchboard's own entry points like any plugin."""
