"""Running the jobs: the command line and configuration, the Spark session and its worker
daemon, cluster packaging."""
