"""Built-in SPICA domains, one module each; every class here must derive from SpicaDomain."""
