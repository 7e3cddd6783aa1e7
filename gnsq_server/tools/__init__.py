"""NSQ's everyday command-line utilities (nsq_tail, to_nsq, nsq_to_file, nsq_stat) as
``gnsq_tail``, ``to_gnsq``, ``gnsq_to_file`` and ``gnsq_stat``: one module per tool, ``client``
for what they share, ``cli`` for the console entry points."""
