"""The engine interface: typed requests and replies (:mod:`.models`), the verbs
(:mod:`.service`), and the adapters that serve them (HTTP in :mod:`.http`; the unix
socket in :mod:`durabook.control`, its client in :mod:`durabook.remote`)."""
