//! Federation endpoints served so far: the OpenID userinfo check. The rest is issue 5.

pub mod openid;
