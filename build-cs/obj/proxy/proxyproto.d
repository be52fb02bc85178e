build-cs/obj/proxy/proxyproto.o: proxy/proxyproto.c proxy/proxyproto.h
proxy/proxyproto.h:
