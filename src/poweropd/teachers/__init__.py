"""Teachers behind one protocol (``scorers.Scorer``): a model in process (``scorers.HFScorer``), a vLLM server
(``served.ServedScorer``), several teachers routed per prompt row (``scorers.RoutedScorer``); ``load_teachers``
builds and checks them."""
