"""Process bootstrap, the RPC transport and bucketed parameter broadcast."""
