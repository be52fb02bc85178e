build-cs/obj/proxy/relay.o: proxy/relay.c proxy/conn.h proxy/buf.h \
 proxy/server.h conf/conf.h certstore/certstore.h proxy/starttls.h \
 proxy/log.h proxy/metrics.h
proxy/conn.h:
proxy/buf.h:
proxy/server.h:
conf/conf.h:
certstore/certstore.h:
proxy/starttls.h:
proxy/log.h:
proxy/metrics.h:
