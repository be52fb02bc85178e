build-conf/obj/conf/listener.o: conf/listener.c conf/internal.h \
 conf/conf.h
conf/internal.h:
conf/conf.h:
