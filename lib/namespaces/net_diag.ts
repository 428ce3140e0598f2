/**
 * sock_diag in a container's network namespace. The socket code asks sock_diag about the
 * sockets it dumps, and a netlink socket answers for the namespace it was made in: during the
 * dump of a container with a net namespace of its own, each of its sock_diag sockets is made by
 * the container's frozen init (an injected socket()) and taken into the tool (pidfd_getfd), so
 * the tool never enters the namespace.
 */
import { AF, close, NETLINK, pidfdGetfd, pidfdOpen, SOCK, SYS } from "../../ffi/mod.ts";
import { diagSocketsFrom } from "../files/socket/diag.ts";
import type { Injector } from "../ptrace/inject.ts";

/** Until disposed, the sock_diag queries of the tool ask the net namespace `inj`'s process is in. */
export function diagInNamespaceOf(inj: Injector): Disposable {
  const pidfd = pidfdOpen(inj.pid);
  const sockets = diagSocketsFrom(() => {
    const fd = inj.raw(SYS.socket, AF.NETLINK, SOCK.DGRAM | SOCK.CLOEXEC, NETLINK.SOCK_DIAG);
    if (fd < 0n) return Number(fd);
    try {
      return pidfdGetfd(pidfd, Number(fd));
    } finally {
      inj.call("close", fd);
    }
  });
  return {
    [Symbol.dispose]: () => {
      sockets[Symbol.dispose]();
      close(pidfd);
    },
  };
}
