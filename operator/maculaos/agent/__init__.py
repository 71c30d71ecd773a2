"""The node agent (the privileged DaemonSet): watches the kinds, applies to its own host, reports its
own node's entries only."""
