build-cs/obj/proxy/proxyin.o: proxy/proxyin.c proxy/conn.h proxy/buf.h \
 proxy/server.h conf/conf.h certstore/certstore.h proxy/starttls.h \
 proxy/log.h proxy/metrics.h proxy/proxyproto.h
proxy/conn.h:
proxy/buf.h:
proxy/server.h:
conf/conf.h:
certstore/certstore.h:
proxy/starttls.h:
proxy/log.h:
proxy/metrics.h:
proxy/proxyproto.h:
