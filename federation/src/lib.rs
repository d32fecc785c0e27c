//! Server-server API (issue 5). Empty until the federation issue lands.
