"""What runs inside the training job: contract (the wire format, shared with the client's encode),
bootstrap (stdlib + boto3, travels alone), launcher, deps, procs. Nothing here imports backend/."""
