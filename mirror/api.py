"""YTS-compatible API routes (see issue 6)."""
