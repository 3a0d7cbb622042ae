"""A real Ray cluster on one machine: a head with no CPUs of its own (it runs the jobs' drivers and
the dashboard) and worker nodes of one CPU each, every one a node with its own raylet, as
`ray start --head` / `ray start --address` make on separate machines. The Ray tests and
`benchmarks.cluster_bench` run on it; it needs the `ray` extra."""

import socket

from llm_pipeline.train.launch import free_port

OBJECT_STORE_BYTES = 128 * 2**20  # Ray's default reserves a share of RAM per node: ~19 GiB for three here


def only_loopback() -> bool:
    """Whether this process is in a network of loopback alone. Elsewhere Ray gives its nodes this
    machine's interface address, which its own clients cannot reach here; `make test` runs the
    suite in a private network namespace (`unshare -n`), where Ray keeps to 127.0.0.1."""
    return all(name == "lo" for _, name in socket.if_nameindex())


class LocalRayCluster:
    def __init__(self, workers: int = 2, cpus_per_worker: int = 1):
        from ray.cluster_utils import Cluster

        self.client_port = free_port()
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "include_dashboard": True,
                "dashboard_port": free_port(),
                "ray_client_server_port": self.client_port,
                "object_store_memory": OBJECT_STORE_BYTES,
                # Ray starts its workers at niceness 15, below its own daemons; on one small machine
                # that hosts every node, the training ranks then yield their cores to raylets, agents
                # and the dashboard. Real nodes have cores to spare; here the ranks compete as equals.
                "_system_config": {"worker_niceness": 0},
            },
        )
        self.cpus_per_worker = cpus_per_worker
        self.workers: list = []
        try:
            for _ in range(workers):
                self.add_worker()
            self.cluster.wait_for_nodes()
        except BaseException:
            self.cluster.shutdown()
            raise

    @property
    def job_address(self) -> str:
        """The dashboard: where jobs are submitted (LLM_PIPELINE_RAY_ADDRESS)."""
        return f"http://{self.cluster.webui_url}"

    @property
    def driver_address(self) -> str:
        """Ray Client, where a process off the cluster connects as a driver (the data stages' default)."""
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def gcs_address(self) -> str:
        """The head's GCS: a driver on a node of the cluster (this machine is one) connects here directly,
        without Ray Client's per-connection server (which now and then fails to start, costing a retry)."""
        return self.cluster.address

    def add_worker(self):
        node = self.cluster.add_node(num_cpus=self.cpus_per_worker, object_store_memory=OBJECT_STORE_BYTES)
        self.workers.append(node)
        return node

    def remove_worker(self, node) -> None:
        """The node and every process on it gone at once, as when its machine fails."""
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()
