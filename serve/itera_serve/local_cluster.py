"""A Ray cluster of several nodes on this machine, all on 127.0.0.1 (ray.cluster_utils.Cluster,
as Ray's own tests do), with Serve's proxy on the head: what the tests and bench/serve_bench.py
run on. Not for production: a real cluster is `ray start` on each machine (docs/scale-out.md)."""
import os
import shutil
import socket
import tempfile

# Ray turns "127.0.0.1" into the machine's outward address unless this is 0 (the one thing the
# flag changes on Linux), and Serve's proxy sends every request to a replica on its own node while
# that one has room (with the one proxy on the head, the worker's replica would get nothing). Both
# are read when Ray is imported and inherited by the processes it starts.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """nodes: a list of each node's custom resources, the head first; one CPU each. start() brings
    up the nodes, connects this process and starts Serve; stop() undoes all of it, whatever failed."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.temp_dir = tempfile.mkdtemp(prefix="itera-ray-")  # short: Ray's socket paths live under it
        self.cluster = None
        self.url = None

    def start(self):
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:  # ray.init would look for the GCS at the outward address
            raise RuntimeError("ray was imported before itera_serve.local_cluster set its environment")
        base = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
        self.cluster = Cluster(initialize_head=True, head_node_args={
            **base, "resources": self.nodes[0], "include_dashboard": False, "temp_dir": self.temp_dir})
        self.head = self.cluster.head_node
        self.workers = [self.cluster.add_node(**base, resources=r) for r in self.nodes[1:]]
        self.cluster.wait_for_nodes(timeout=60)
        ray.init(address=self.cluster.address, logging_level="warning", log_to_driver=False)
        # every node is 127.0.0.1: the driver must hold the head's raylet, or removing a worker breaks it
        if ray.get_runtime_context().get_node_id() != self.head.node_id:
            raise RuntimeError("the driver did not attach to the head node")
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self):
        import ray
        from ray import serve

        errors = []
        for step in (serve.shutdown, ray.shutdown, lambda: self.cluster and self.cluster.shutdown()):
            try:
                step()
            except Exception as e:  # keep stopping the rest
                errors.append(repr(e))
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return errors


def deployment_options(config_path, app="itera"):
    """(args, options) of the application `app` in a serve config file (serve/config.yaml),
    checked against Serve's schema: IteraDeployment's arguments, and its deployment options
    (num_replicas or autoscaling_config, max_ongoing_requests, ray_actor_options)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    with open(config_path) as f:
        config = ServeDeploySchema.model_validate(yaml.safe_load(f))
    application = next(a for a in config.applications if a.name == app)
    deployment = next(d for d in application.deployments if d.name == "itera")
    return dict(application.args), deployment.model_dump(exclude_unset=True, exclude={"name"})
