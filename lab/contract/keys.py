"""Keys of the records and configs exchanged between coordinator and nodes (lab.contract.messages
reads and writes them; nothing else does).

The record keys match FedAvg's defaults (``arrayrecord_key``, ``configrecord_key``,
``weighted_by_key``), so Flower's strategies read the nodes' replies as they are.
"""

# Records in a message's RecordDict
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NODE = "node"  # ConfigRecord: who answered

# In the NODE record
NODE_REPORT = "report"  # a train or evaluate reply's node report (JSON)
NODE_NAME = "node-name"  # a query reply: the node's name, organisation and answer (JSON)
ORGANISATION = "organisation"
ANSWER = "answer"
AUDIT_COUNT = "audit-count"  # every accepted reply: the node's audit log length after recording it
AUDIT_HEAD = "audit-head"  # ... and the hash of its last entry

# Metric keys
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EVAL_PREFIX = "eval."  # in a train reply: the received global model's metrics on the test split
DP_EPSILON = "dp-epsilon"  # in a train reply: epsilon this run has spent at the node so far
AUC_UNRELIABLE = "auc-unreliable"  # in an evaluate reply: 1 when a class has under 5 test rows
NOISE_PREFIX = "noise."  # a released score's noise: its standard deviation (lab.core.scores), metric by metric

# Scoring coalitions' models (federation.contributions): an evaluate message of this action holds
# the candidate models in one ArrayRecord, CANDIDATES, each parameter stacked over the models; the
# reply one MetricRecord per candidate, CANDIDATE + its index
CANDIDATES_ACTION = "candidates"
CANDIDATES = "candidates"
CANDIDATE = "candidate-"

# A query message's config
TASK_SPEC = "task-spec"  # the spec's text, sent once per run, in queries only
REQUEST = "request"  # the query kind's request (JSON)

# A train or evaluate message's config (Flower's strategies add server-round, and FedProx proximal-mu)
TASK = "task"  # the task's name; with SPEC_FINGERPRINT it names the spec the node received
SPEC_FINGERPRINT = "spec-sha256"
STRATEGY = "strategy"
SCALER_MEAN = "scaler-mean"
SCALER_STD = "scaler-std"
TARGET_MEAN = "target-mean"  # a regression target's federated mean and std (one number each)
TARGET_STD = "target-std"
SEED = "seed"
LOCAL_STEPS = "local-steps"
BATCH_SIZE = "batch-size"
LEARNING_RATE = "learning-rate"
EVALUATE_FIRST = "evaluate-first"  # evaluate the received model before training on it
DIFFERENTIAL_PRIVACY = "differential-privacy"  # the run's DP settings (JSON), empty without DP
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
SECURE_AGGREGATION = "secure-aggregation"  # the round runs SecAgg+ (federation.secure_aggregation)
ARRAY_NAMES = "array-names"  # SecAgg+ rounds: the model's parameter names, in order

# Error codes of a node's reply (the reason says why): a refusal, and a failure of the lab itself
REFUSED = 4001
FAILED = 4002
