//! Seeds for the `redis_resp` fuzz target: client commands (RESP arrays,
//! inline commands with quoting) and server replies of every RESP2 and RESP3
//! type, including the shapes masking walks (MGET, HGETALL, XRANGE, XREAD,
//! SCAN, EXEC, pub/sub pushes).

pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let s = |name: &'static str, bytes: &[u8]| ("redis_resp", name, bytes.to_vec());
    vec![
        s("get-set", b"*2\r\n$3\r\nGET\r\n$9\r\nsecret:db\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"),
        s("inline", b"PING\r\nSET k \"a\\x41\\n b\" 'it\\'s'\r\nMGET a k secret:x\r\n"),
        s("multi", b"MULTI\r\nSET k 1\r\nFLUSHALL\r\nGET k\r\nEXEC\r\n"),
        s("hello-auth", b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$2\r\npw\r\n"),
        s("xread", b"*6\r\n$5\r\nXREAD\r\n$7\r\nSTREAMS\r\n$1\r\na\r\n$1\r\nk\r\n$1\r\n0\r\n$1\r\n0\r\n"),
        s("giant-bulk", b"*1\r\n$99999999999\r\n"),
        s("deep", b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"),
        s("scalars", b"+OK\r\n-ERR no AKIAABCDEFGHIJKLMNOP\r\n:42\r\n$-1\r\n*-1\r\n_\r\n#t\r\n,1.5\r\n(12345678901234567890\r\n!5\r\nERR x\r\n=9\r\ntxt:hello\r\n"),
        s("mget-reply", b"*3\r\n$1\r\nx\r\n$20\r\nAKIAABCDEFGHIJKLMNOP\r\n$-1\r\n"),
        s("hgetall-resp3", b"%2\r\n$1\r\nf\r\n$1\r\nv\r\n$1\r\ng\r\n$1\r\nw\r\n"),
        s("zrange-scores", b"*2\r\n*2\r\n$1\r\nm\r\n,1\r\n*2\r\n$1\r\nn\r\n,2\r\n"),
        s("xrange", b"*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        s("xread-reply", b"*1\r\n*2\r\n$1\r\nk\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        s("hscan", b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        s("push-message", b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nhello\r\n|1\r\n+ttl\r\n:3\r\n$1\r\nx\r\n"),
        s("set-map", b"~2\r\n$1\r\na\r\n$1\r\nb\r\n%1\r\n+k\r\n*1\r\n:1\r\n"),
    ]
}
