"""sseproxy: a reverse proxy that never breaks a stream."""

from .config import Config
from .errors import ConfigError, ProxyError
from .loader import Overrides, load
from .runtime import Runtime, compile_config
from .server import Listener

__all__ = ["Config", "ConfigError", "Listener", "Overrides", "ProxyError", "Runtime", "compile_config", "load"]
__version__ = "0.1.0"
