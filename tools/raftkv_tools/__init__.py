"""raftkv's development and operations tools (the raftkv-tools distribution, not shipped to VMs).

bench/            `raftkv bench` (raftkv-bench): load generator, etcd and PySyncObj peers
localcluster.py   `make cluster-up/down/status/clean` (raftkv-cluster)
logreview.py      `raftkv logs review` (raftkv-logs); logreview_plot.py draws --plot
certs.py          `raftkv certs` (raftkv-certs): a CA and per-node TLS certificates
delayproxy.py     the TCP proxy: delay, black holes, hold-while-down (raftkv-delayproxy), used
                  by bench --wan and, as LinkProxies, by the fault tests
launcher.py       starts local processes: nodes (raftkv.server.launch.NodeLaunch) and peers
ports.py          free TCP ports for local clusters, proxies and tests
commands.py       the `raftkv.commands` entry points and the console scripts
"""
