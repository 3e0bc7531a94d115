"""Faults on real `raftkv-node` processes: kill -9, SIGSTOP, kernel partitions, delay, clock skew.

See tests/faults/README.md. The pieces:

- `netns`      network namespaces on a bridge, and nftables rules that cut links (root only);
- `proxy`      an asyncio TCP proxy per directed link: added delay and black-holing;
- `controller` a cluster of real node processes and every fault, from pytest or a command;
- `history`    asyncio gRPC clients that record a history for the linearizability checker;
- `jepsen`     seeded randomized runs: `python -m tests.faults.jepsen --time 60 --seed 1`.
"""
