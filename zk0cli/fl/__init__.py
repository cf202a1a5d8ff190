"""The Flower app of zk0: server and client apps, strategy, schedules, integrity and run records."""
