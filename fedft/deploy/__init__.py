"""Deployment: ``fedft certs``, ``fedft server`` and ``fedft client`` over Flower's own processes.

``fedft server`` runs a Flower SuperLink (Fleet API over gRPC, TLS on by default) and submits
fedft's app to it with ``flwr run``; ``fedft client`` runs a Flower SuperNode. Nothing Flower does
is rewritten here: these modules only build Flower's command lines, start and stop its processes,
and make the certificates and keys its flags expect.
"""
