"""Names shared by the backend, the bridge and the CLI."""

APP_NAME = "libervia"
CONFIG_FILE_NAME = "libervia.conf"
DB_FILE_NAME = "libervia.db"
BRIDGE_SOCKET_NAME = "bridge.sock"
PID_FILE_NAME = "backend.pid"
LOG_FILE_NAME = "backend.log"

# Environment variable overriding the database URL of the config file.
ENV_DB_URL = "LIBERVIA_DB_URL"

# Pubsub node sync states, stored in the database.
SYNC_IN_PROGRESS = "IN_PROGRESS"
SYNC_COMPLETED = "COMPLETED"
SYNC_ERROR = "ERROR"
SYNC_NO_SYNC = "NO_SYNC"

# Keys of the metadata mapping returned with pubsub items.
META_SERVICE = "service"
META_NODE = "node"
META_RSM = "rsm"
META_COMPLETE = "complete"
META_FROM_CACHE = "from_cache"
