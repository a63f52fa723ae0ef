"""The one layer under ``clipadapt bench`` and ``clipadapt adapt``: describe a task
(``task``), fit a method on exactly the data it declares and score it (``experiment``,
``openset``), and record a typed result (``results``)."""
