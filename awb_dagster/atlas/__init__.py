"""The atlas: kNN graphs of embedding spaces, their disagreement, and the ensemble's stop rule.

Plain Python (numpy, torch for blocked matmul/top-k, pyarrow, matplotlib); no Dagster.
``knn`` exact blocked cosine kNN · ``compare`` Jaccard, linear CKA, bootstrap · ``topology``
the stop rule · ``maps`` the 2-D map · ``spaces`` vectors from sealed runs · ``analysis``
the computations on spaces · ``plots`` PNGs · ``report`` Markdown.
"""
