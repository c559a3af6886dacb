"""Keys of the records and configs exchanged between coordinator and nodes.

The record keys match FedAvg's defaults (``arrayrecord_key``, ``configrecord_key``,
``weighted_by_key``), so Flower's strategies read the nodes' replies as they are.
"""

# Records in a message's RecordDict
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NODE = "node"  # ConfigRecord: who answered (name, organisation, row counts)

# Metric keys
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
COLUMN_COUNT = "column-count"
COLUMN_SUM = "column-sum"
COLUMN_SQUARES = "column-squares"
TARGET_COUNT = "target-count"  # a regression target's count, sum and sum of squares (its federated scaler)
TARGET_SUM = "target-sum"
TARGET_SQUARES = "target-squares"
BASELINE_PREFIX = "baseline."
EVAL_PREFIX = "eval."  # in a train reply: the received global model's metrics on the test split

# Config keys sent to nodes
TASK_SPEC = "task-spec"
SERVER_ROUND = "server-round"
SCALER_MEAN = "scaler-mean"
SCALER_STD = "scaler-std"
TARGET_MEAN = "target-mean"  # a regression target's federated mean and std (one number each)
TARGET_STD = "target-std"
LEARNING_RATE = "learning-rate"
LOCAL_STEPS = "local-steps"
BATCH_SIZE = "batch-size"
PROXIMAL_MU = "proximal-mu"
SEED = "seed"
BASELINE_EPOCHS = "baseline-epochs"
EVALUATE_FIRST = "evaluate-first"  # evaluate the received model before training on it
SECURE_AGGREGATION = "secure-aggregation"  # the round runs SecAgg+ (federation.secure_aggregation)
ARRAY_NAMES = "array-names"  # SecAgg+ rounds: the model's parameter names, in order

# Node identity keys (NODE record) and node_config keys
NODE_NAME = "node-name"
DATA_PATH = "data-path"
ORGANISATION = "organisation"
TRAIN_ROWS = "train-rows"
TEST_ROWS = "test-rows"
DROPPED_ROWS = "dropped-rows"

# Message types: the prepare query is "query.prepare"
PREPARE = "prepare"
PREPARE_MESSAGE_TYPE = "query.prepare"
CATALOG = "catalog"
CATALOG_MESSAGE_TYPE = "query.catalog"
CATALOG_JSON = "catalog-json"  # in the NODE record of a catalog reply
PREFLIGHT_JSON = "preflight-json"
STATS = "stats"
STATS_MESSAGE_TYPE = "query.stats"
STATS_REQUEST = "stats-request"  # config: the analytics query (JSON)
STATS_JSON = "stats-json"  # in the NODE record of a stats reply: the node's suppressed summary
PUBLISH_NODE_FIGURES = "publish-node-figures"  # NODE record: may the coordinator show this node's own figures
SUPPRESSED = "suppressed"  # NODE record: what the node held back under the minimum cell count, and why

# Fingerprints every node reply carries (NODE record), and the federation's pinned environment
ENV_FINGERPRINT = "env-fingerprint"
ENV_PYTHON = "env-python"
ENV_PLATFORM = "env-platform"
ENV_PINS = "env-pins"  # the node's name==version list (prepare reply only)
ENV_DRIFT = "env-drift"  # readable differences from the lock, empty when none
DATA_FINGERPRINT = "data-sha256"  # hash of the node's training rows after loading
SPEC_FINGERPRINT = "spec-sha256"  # hash of the task spec the node received
ENV_POLICY = "environment-policy"  # config: strict | warn
LOCK_PINS = "lock-pins"
LOCK_PYTHON = "lock-python"
LOCK_PLATFORM = "lock-platform"

# Governance: node_config paths, and what the run tells nodes about itself
AGREEMENT = "agreement"  # node_config: path of the node's data-use agreement
AUDIT_LOG = "audit-log"  # node_config: path of the node's audit log
STRATEGY = "strategy"
DIFFERENTIAL_PRIVACY = "differential-privacy"

# Differential privacy: config sent to nodes, and what a node reports
NUM_ROUNDS = "num-rounds"
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
DP_TARGET_EPSILON = "dp-target-epsilon"
DP_CLIPPING_NORM = "dp-clipping-norm"
DP_DELTA = "dp-delta"
DP_EPSILON = "dp-epsilon"  # metric: epsilon this run has spent at the node so far (train reply)
DP_PLANNED_EPSILON = "dp-planned-epsilon"  # NODE record of the prepare reply: the whole run's epsilon
DP_NOISE_USED = "dp-noise-used"  # NODE record: the noise multiplier the node trains with
PRIVACY_LEDGER = "privacy-ledger"  # node_config: path of the node's privacy ledger

# Error codes of a node's reply (the reason says why): a refusal, and a failure of the lab itself
REFUSED = 4001
FAILED = 4002
