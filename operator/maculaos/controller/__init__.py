"""The cluster-wide kopf controller: judges objects, decides per node, writes status and Events."""
