"""The one registry of metrics and scorers."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


SCORE_COLUMNS = ("quality", "complexity", "difficulty", "if_quality", "process_reward", "code_quality", "inst_length", "resp_length", "last_resp_length",
                 # raw outputs of the model scorers (the metrics above may be filled from them by the profile)
                 "lite_quality", "lite_difficulty", "ifd", "ifd_cond_loss", "ifd_direct_loss", "process_reward_min", "process_reward_mean")

