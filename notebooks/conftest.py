# workflows/ holds notebooks that the demo notebooks drive (one fails on purpose):
# nbval runs the demos, not those.
collect_ignore_glob = ["workflows/*"]
