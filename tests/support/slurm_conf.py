"""A slurm.conf for a single-node Slurm on 127.0.0.1, run as root with no
authentication, its state under DIR:

    slurm_conf.py DIR CPUS        writes DIR/slurm.conf, prints its path

Used by the launcher tests and benches/object_store.sh."""
import socket
import sys
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(dir, cpus):
    """DIR/slurm.conf, and the controller's port."""
    dir = Path(dir)
    for sub in ("state", "spool"):
        (dir / sub).mkdir(parents=True, exist_ok=True)
    ctld = free_port()
    conf = dir / "slurm.conf"
    conf.write_text(f"""ClusterName=kiln
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={free_port()}
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    return conf, ctld


if __name__ == "__main__":
    print(write(sys.argv[1], int(sys.argv[2]))[0])
