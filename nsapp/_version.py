"""The example app's version; ./build.sh --version V rewrites this file in its staging copy."""

VERSION = "0.1.0.dev0"
