"""The JaaS v1 API as the operator sees it: constants, Ready reasons, parsed specs."""
