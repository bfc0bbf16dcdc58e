"""TLS: the CA and its leaf certificates, ClientHello parsing, origin verification, the bulk TLS transport."""
