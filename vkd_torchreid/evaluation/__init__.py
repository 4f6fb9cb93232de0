"""Evaluation without data: distances, ranking (CMC, mAP, ATRW's protocol) and ranked-list
pictures. The Evaluator (``vkd_torchreid.engine.evaluator``) feeds it features and images."""
from vkd_torchreid.evaluation.rank_list import (
    RankedItem,
    render_ranked_list,
    save_ranked_list,
    top_k,
)
from vkd_torchreid.evaluation.ranking import (
    AP_MODES,
    METRICS,
    NoValidQueryError,
    atrw_plain_protocol,
    compute_distance_matrix,
    evaluate_rank,
    rank_all,
)

__all__ = ["AP_MODES", "METRICS", "NoValidQueryError", "RankedItem", "atrw_plain_protocol",
           "compute_distance_matrix", "evaluate_rank", "rank_all", "render_ranked_list",
           "save_ranked_list", "top_k"]
