"""How the training runner starts one host of a job: a local process or a container."""
