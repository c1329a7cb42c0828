"""Workers dispatched over NATS: a gateway takes signaling and picks a worker by load;
the worker answers the call itself, so media flows straight between caller and worker.

- :mod:`.bus`: the NATS connection, the subjects, the local nats-server, and the call
  records as JetStream messages.
- :mod:`.dispatch`: the load table the gateway picks a worker from.
- :mod:`.worker`: a worker process (``rejoinder worker``).
- :mod:`.gateway`: the gateway (``rejoinder gateway``) and the store's one writer.
- :mod:`.supervisor`: ``rejoinder serve --workers N`` on one machine.

Single-process mode (``rejoinder serve``) imports none of it and needs no NATS.
"""
