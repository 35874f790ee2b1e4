//! Which cluster node a command goes to: the slot of its key, any node, or every primary.
//!
//! Reading the command name allocates nothing: it is compared in place, ignoring case.

use redis::{Arg, Cmd, Pipeline};

use crate::keyspace::hash_slot;

/// Where an operation goes on a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The primary that owns this slot.
    Slot(u16),
    /// Any node (a command without a key).
    Any,
    /// Every primary (`SCRIPT LOAD`, `FLUSHALL`, ...): all must succeed.
    AllPrimaries,
}

/// Commands whose answer must come from every primary, and is then the same from each.
const ALL_PRIMARIES: &[&[u8]] = &[b"FLUSHALL", b"FLUSHDB"];
/// With one of these subcommands, `SCRIPT`, `FUNCTION` and `CONFIG` go to every primary.
const ALL_PRIMARIES_SUB: &[&[u8]] = &[
    b"LOAD",
    b"FLUSH",
    b"DELETE",
    b"RESTORE",
    b"SET",
    b"RESETSTAT",
];
/// Commands that name no key: they go to any node.
const KEYLESS: &[&[u8]] = &[
    b"PING",
    b"ECHO",
    b"TIME",
    b"INFO",
    b"CLUSTER",
    b"CONFIG",
    b"CLIENT",
    b"COMMAND",
    b"DBSIZE",
    b"KEYS",
    b"SCAN",
    b"RANDOMKEY",
    b"LASTSAVE",
    b"SCRIPT",
    b"FUNCTION",
    b"SLOWLOG",
    b"LATENCY",
    b"ACL",
    b"AUTH",
    b"HELLO",
    b"READONLY",
    b"READWRITE",
    b"WAIT",
    b"PUBLISH",
    b"PUBSUB",
    b"ROLE",
    b"LOLWUT",
    b"MODULE",
    b"SAVE",
    b"BGSAVE",
    b"DEBUG",
];
/// `<name> numkeys key ...`: the key is the third argument when `numkeys` > 0.
const KEY_AFTER_COUNT_AT_2: &[&[u8]] = &[
    b"EVAL",
    b"EVALSHA",
    b"EVAL_RO",
    b"EVALSHA_RO",
    b"FCALL",
    b"FCALL_RO",
    b"BLMPOP",
    b"BZMPOP",
];
/// `<name> numkeys key ...`: the key is the second argument when `numkeys` > 0.
const KEY_AFTER_COUNT_AT_1: &[&[u8]] = &[
    b"LMPOP",
    b"SINTERCARD",
    b"ZDIFF",
    b"ZINTER",
    b"ZINTERCARD",
    b"ZMPOP",
    b"ZUNION",
];
/// `<name> <subcommand or operation> key ...`.
const KEY_AT_2: &[&[u8]] = &[b"OBJECT", b"MEMORY", b"XINFO", b"XGROUP", b"BITOP"];

fn is_one_of(name: &[u8], set: &[&[u8]]) -> bool {
    set.iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn arg(cmd: &Cmd, i: usize) -> Option<&[u8]> {
    match cmd.args_iter().nth(i)? {
        Arg::Simple(a) => Some(a),
        _ => None,
    }
}

fn key_after_count(cmd: &Cmd, count_at: usize) -> Route {
    let count = arg(cmd, count_at)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok());
    match count {
        Some(n) if n > 0 => slot_of(arg(cmd, count_at + 1)),
        _ => Route::Any,
    }
}

fn slot_of(key: Option<&[u8]>) -> Route {
    key.map_or(Route::Any, |k| Route::Slot(hash_slot(k)))
}

/// The route of one command. A command whose keys span several slots goes to the first
/// key's node, which refuses it (`CROSSSLOT`) as it would refuse a script.
pub(crate) fn of_cmd(cmd: &Cmd) -> Route {
    let Some(name) = arg(cmd, 0) else {
        return Route::Any;
    };
    if is_one_of(name, ALL_PRIMARIES) {
        return Route::AllPrimaries;
    }
    if is_one_of(name, KEY_AFTER_COUNT_AT_2) {
        return key_after_count(cmd, 2);
    }
    if is_one_of(name, KEY_AFTER_COUNT_AT_1) {
        return key_after_count(cmd, 1);
    }
    if is_one_of(name, KEY_AT_2) {
        return slot_of(arg(cmd, 2));
    }
    if is_one_of(name, &[b"XREAD", b"XREADGROUP"]) {
        let streams = cmd
            .args_iter()
            .position(|a| matches!(a, Arg::Simple(a) if a.eq_ignore_ascii_case(b"STREAMS")));
        return slot_of(streams.and_then(|i| arg(cmd, i + 1)));
    }
    if is_one_of(name, KEYLESS) {
        let fan_out = is_one_of(name, &[b"SCRIPT", b"FUNCTION", b"CONFIG"])
            && arg(cmd, 1).is_some_and(|sub| is_one_of(sub, ALL_PRIMARIES_SUB));
        return if fan_out {
            Route::AllPrimaries
        } else {
            Route::Any
        };
    }
    slot_of(arg(cmd, 1))
}

/// The route of a pipeline: that of its first command with a key (a pipeline must stay in one
/// slot on a cluster).
pub(crate) fn of_pipeline(pipe: &Pipeline) -> Route {
    pipe.cmd_iter()
        .map(of_cmd)
        .find(|r| matches!(r, Route::Slot(_)))
        .unwrap_or(Route::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(args: &[&str]) -> Route {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        of_cmd(&c)
    }

    #[test]
    fn keys_are_found_where_each_command_puts_them() {
        let slot = |k: &str| Route::Slot(hash_slot(k.as_bytes()));
        assert_eq!(route(&["get", "a"]), slot("a"));
        assert_eq!(route(&["SPUBLISH", "{ch}", "x"]), slot("{ch}"));
        assert_eq!(
            route(&["EVALSHA", "abc", "2", "k1", "k2", "arg"]),
            slot("k1")
        );
        assert_eq!(route(&["eval", "return 1", "0", "notakey"]), Route::Any);
        assert_eq!(route(&["ZINTER", "2", "z1", "z2"]), slot("z1"));
        assert_eq!(route(&["OBJECT", "ENCODING", "o"]), slot("o"));
        assert_eq!(
            route(&["XREAD", "COUNT", "2", "STREAMS", "s1", "0"]),
            slot("s1")
        );
        assert_eq!(route(&["PING"]), Route::Any);
        assert_eq!(route(&["script", "exists", "abc"]), Route::Any);
        assert_eq!(route(&["SCRIPT", "load", "return 1"]), Route::AllPrimaries);
        assert_eq!(route(&["FUNCTION", "LOAD", "x"]), Route::AllPrimaries);
        assert_eq!(route(&["flushall"]), Route::AllPrimaries);
        assert_eq!(route(&["CONFIG", "GET", "x"]), Route::Any);
    }

    #[test]
    fn a_pipeline_goes_where_its_first_key_goes() {
        let mut p = redis::pipe();
        p.cmd("PING")
            .cmd("INCR")
            .arg("{t}:a")
            .cmd("GET")
            .arg("{t}:b");
        assert_eq!(of_pipeline(&p), Route::Slot(hash_slot(b"{t}:a")));
        let mut p = redis::pipe();
        p.cmd("PING");
        assert_eq!(of_pipeline(&p), Route::Any);
    }
}
