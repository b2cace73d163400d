"""The etcd store layer: keyspace, records and their JSON codec, client, lease, election, watch.

Only this package knows etcd keys (keyspace.py) and the etcd client library (client.py). Everything
else in epochserve reaches etcd through the coordinator and the participant clients built on it.
"""
