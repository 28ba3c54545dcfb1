"""Ray job: a long-running stream consumer (`sira ingest --stream` or `sira ingest --kafka`) on a cluster.

    sira jobs submit stream -- --kafka broker-1:9092 --topic payments --labels-topic chargebacks
    sira jobs submit stream -- --stream --consumer ingest-1

Takes exactly the options of `sira ingest` for a stream (see `python jobs/stream.py --help`); it consumes
until the job is stopped (`ray job stop`: SIGTERM, the batch in hand is committed first). Run several, in
one consumer group, to split a Kafka topic's partitions or share the Redis stream.
"""

import sys

from sira.cli.main import run_job

if __name__ == "__main__":
    sys.exit(run_job(["ingest", *sys.argv[1:]]))
