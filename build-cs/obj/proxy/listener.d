build-cs/obj/proxy/listener.o: proxy/listener.c proxy/listener.h \
 conf/conf.h proxy/server.h certstore/certstore.h proxy/conn.h \
 proxy/buf.h proxy/starttls.h proxy/log.h
proxy/listener.h:
conf/conf.h:
proxy/server.h:
certstore/certstore.h:
proxy/conn.h:
proxy/buf.h:
proxy/starttls.h:
proxy/log.h:
