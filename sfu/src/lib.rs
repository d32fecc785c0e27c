//! The SFU (issue 6). Empty until the SFU issue lands.
