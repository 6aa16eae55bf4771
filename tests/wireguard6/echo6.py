# A TCP echo server on [::]:7777 for marker exchanges (runs until killed or 60 s idle);
# prints "ready" once it listens.
import socket
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 7777)); s.listen(16); s.settimeout(60)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(5)
    b = c.recv(4096)
    c.sendall(b); c.close()
