"""The engine as a service: the ZeroMQ server (wire protocol in shared/PROTOCOL.md), its worker thread,
the on-disk job store, CURVE keys, and ``submit``, the command-line client.

It uses the algorithm only through the public API (:class:`engine_server.Stylizer`), plus the file
helpers of :mod:`engine_server.io`; the algorithm never imports anything from here.
"""
