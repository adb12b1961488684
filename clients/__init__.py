"""fedft's Flower ClientApp (:mod:`clients.app`) and its runtimes (:mod:`clients.runtimes`)."""

from fedft.console import quiet_worker

# In a simulation's Ray worker, hide library chatter before peft, torch and transformers load:
# their imports warn, and Flower's import there has put its own warning filter first.
quiet_worker()
