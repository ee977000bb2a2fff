"""Joining the gang (env, signing, rendezvous, heartbeat), the control channel, the RPC
transport and bucketed parameter broadcast."""
