"""The client-facing HTTP/1.1 server both OpenAI front doors run on, and server TLS material."""
