"""The Spark engine of ``recoffer train --engine spark`` (issue 15, item 1).

The purchases are read, cleaned and aggregated in Spark; only what the artifact itself holds
(one row per user x item pair, the id lists, the factors) reaches the driver. Modules by
concern: ``session`` (the SparkSession and what it needs), ``load`` (reading and cleaning, the
rules of ``training.data.formats``), ``aggregate`` (history, weights, popularity, trending),
``fit`` (Spark MLlib ALS or implicit on the driver), ``engine`` (the run, as
``training.pipeline`` runs the pandas engine). pyspark is imported only inside them: the
pandas engine and the service never import it.
"""
